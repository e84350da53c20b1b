"""Alembic environment: runs against the connection or URL that :mod:`jobs.migrate` passes in."""

from __future__ import annotations

from alembic import context
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Connection, MetaData, PrimaryKeyConstraint, String, Table, inspect

from jobs import db, models

config = context.config

#: jobrunner's own version table: a service's Alembic history keeps ``alembic_version`` to itself,
#: so ``alembic upgrade head`` of the service and ``jobctl db upgrade`` never touch each other's.
VERSION_TABLE = "jobrunner_alembic_version"
#: Where databases migrated before jobrunner had a version table of its own keep its revision.
SHARED_VERSION_TABLE = "alembic_version"


def _run(connection: Connection) -> None:
    if connection.in_transaction():
        _move_revision_from_shared_table(connection)  # the caller's transaction
    else:
        # Committed on its own: Alembic commits nothing when no migration is due (and on SQLite,
        # which has no transactional DDL, only per migration).
        with connection.begin():
            _move_revision_from_shared_table(connection)
    context.configure(
        connection=connection,
        target_metadata=models.Base.metadata,
        version_table=VERSION_TABLE,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _move_revision_from_shared_table(connection: Connection) -> None:
    """A database jobrunner migrated when it still used ``alembic_version``: move jobrunner's
    revision from there to :data:`VERSION_TABLE`, in the migration's transaction.

    Only a revision of jobrunner's own history moves, and only where jobrunner's tables exist, so a
    service's revision in ``alembic_version`` stays where it is; the table is dropped if that
    leaves it empty (the service's ``alembic upgrade`` makes it again).
    """
    inspector = inspect(connection)
    if inspector.has_table(VERSION_TABLE) or not inspector.has_table(SHARED_VERSION_TABLE):
        return
    if not (inspector.has_table("jobs") and inspector.has_table("job_attempts")):
        return
    ours = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    metadata = MetaData()
    shared = Table(SHARED_VERSION_TABLE, metadata, Column("version_num", String(32), nullable=False))
    found = [revision for revision in connection.execute(shared.select()).scalars() if revision in ours]
    if not found:
        return
    # The table as Alembic makes it (alembic.runtime.migration.MigrationContext._version).
    own = Table(
        VERSION_TABLE,
        metadata,
        Column("version_num", String(32), nullable=False),
        PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
    )
    own.create(connection)
    connection.execute(own.insert(), [{"version_num": revision} for revision in found])
    connection.execute(shared.delete().where(shared.c.version_num.in_(found)))
    if connection.execute(shared.select()).first() is None:
        shared.drop(connection)


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
