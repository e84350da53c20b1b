"""Schema changes through Alembic, driven from code (``jobctl db upgrade``, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

from jobs import db

#: Where the migration scripts live (inside the package, so an installed jobrunner can migrate).
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str | URL) -> Config:
    """An Alembic config for the database at ``url``, without an ini file."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    rendered = db.normalize_url(url).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def upgrade(url: str | URL, revision: str = "heads") -> None:
    """Bring the database at ``url`` up to ``revision`` (creating a SQLite file's folder if needed)."""
    parsed = db.normalize_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(parsed), revision)


def downgrade(url: str | URL, revision: str) -> None:
    """Take the database at ``url`` down to ``revision`` (``base``: none of jobrunner's tables)."""
    command.downgrade(alembic_config(url), revision)
