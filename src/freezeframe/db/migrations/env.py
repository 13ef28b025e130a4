from alembic import context

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    # Our own version table: taskflow keeps its own Alembic history in the same database.
    # The services' models are not imported here (the db layer knows no service): whoever
    # compares them with the migrations passes their metadata (tests/unit/db/test_models_match.py).
    context.configure(connection=connection, target_metadata=context.config.attributes.get("metadata"),
                      render_as_batch=True, version_table="freezeframe_migrations")
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
