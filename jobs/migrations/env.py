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
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("no database to migrate: pass a connection or sqlalchemy.url (see jobs.migrate)")
    engine = db.make_engine(url, pool_size=1, application_name="jobrunner-migrate")
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()
