from alembic import context

from freezeframe.db.base import Base
import freezeframe.compute.model  # noqa: F401  (registers the tables)
import freezeframe.conductor.model  # noqa: F401
import freezeframe.db.health  # noqa: F401
import freezeframe.identity.model  # noqa: F401
import freezeframe.images.model  # noqa: F401

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    # Our own version table: taskflow keeps its own Alembic history in the same database.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                      version_table="freezeframe_migrations")
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
