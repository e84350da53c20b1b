"""Alembic environment: runs against the connection or URL that :mod:`jobs.migrate` passes in."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from jobs import db, models

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=models.Base.metadata,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = db.make_engine(config.get_main_option("sqlalchemy.url"), pool_size=1, application_name="jobrunner-migrate")
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()
