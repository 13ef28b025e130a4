from alembic import context

from freezeframe.db.base import Base
import freezeframe.images.model  # noqa: F401  (registers the tables)

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
