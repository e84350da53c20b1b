"""The shop's Alembic environment: its own history in the default ``alembic_version`` table.

jobrunner keeps its revision in ``jobrunner_alembic_version`` (``jobctl db upgrade``), so the two
histories never meet. ``include_name`` keeps jobrunner's tables out of the shop's autogenerate.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from shopapp import config, models

alembic_config = context.config


def _only_the_shops_tables(name: str | None, type_: str, parent_names: object) -> bool:
    return type_ != "table" or name in models.Base.metadata.tables


url = make_url(alembic_config.get_main_option("sqlalchemy.url") or config.database_url())
if url.drivername == "postgresql":
    url = url.set(drivername="postgresql+psycopg")
engine = create_engine(url)
try:
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=models.Base.metadata,
            include_name=_only_the_shops_tables,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
finally:
    engine.dispose()
